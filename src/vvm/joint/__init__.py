"""The joint pass over a finished sweep (``python -m vvm.joint <sweep dir>``): :mod:`.joint_pass` rebuilds each
job's model from its stored settings and runs every measure on one batch plan; :mod:`.files` writes its files."""


def main(argv=None) -> int:
    from vvm.joint.joint_pass import main as run

    return run(argv)


__all__ = ["main"]
