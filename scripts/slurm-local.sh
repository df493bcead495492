#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests marked `slurm` (make test-cluster) and for trying the
# README's cluster commands: Debian's slurm-wlm and munge, one partition (`debug`, the node's CPUs and memory),
# munged, slurmctld and slurmd started as root with their state under $VVM_SLURM_DIR.
#
#   scripts/slurm-local.sh up      # install when missing, configure, start, wait until the node is idle
#   scripts/slurm-local.sh down    # stop exactly what `up` started (by the pids it recorded), nothing else
#   scripts/slurm-local.sh status  # sinfo, or why there is no cluster
#
# Environment: VVM_SLURM_DIR (default /tmp/vvm-slurm: config, state, logs, pids), VVM_SLURM_PARTITION (debug),
# VVM_SLURM_CPUS (the CPUs declared for the node; default: at least 2, so that a 2-task DDP job fits on a
# 2-core machine: Slurm then runs the two tasks on the cores there are). Needs root (apt-get, daemons).
set -euo pipefail

DIR=${VVM_SLURM_DIR:-/tmp/vvm-slurm}
PARTITION=${VVM_SLURM_PARTITION:-debug}
NODE=$(hostname -s)
CONF=$DIR/etc/slurm.conf

log() { echo "slurm-local: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

install_packages() {
	local missing=()
	command -v munged >/dev/null || missing+=(munge)
	command -v slurmctld >/dev/null || missing+=(slurmctld)
	command -v slurmd >/dev/null || missing+=(slurmd)
	command -v sbatch >/dev/null || missing+=(slurm-client)
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root (apt-get)"
	log "installing ${missing[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_config() {
	local cpus mem_mb
	cpus=${VVM_SLURM_CPUS:-$(nproc)}
	[ "$cpus" -ge 2 ] || cpus=2 # a 2-task DDP job must fit (Slurm oversubscribes nothing: it only counts)
	# the node's memory less 1 GiB for the daemons and the system, in MB as slurm.conf counts it
	mem_mb=$(awk '/MemTotal/ {print int($2 / 1024) - 1024}' /proc/meminfo)
	mkdir -p "$DIR"/etc "$DIR"/state "$DIR"/spool "$DIR"/log "$DIR"/munge
	cat >"$CONF" <<EOF
# written by scripts/slurm-local.sh: a one-node test cluster on $NODE
ClusterName=vvm-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (120 by default): 5 on this test cluster
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# look at pending jobs every few seconds (a requeued job starts soon after it may)
SchedulerParameters=sched_interval=3,bf_interval=3
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# seconds between SIGTERM and SIGKILL when a job is cancelled, preempted or reaches its time limit
KillWait=30
# finished jobs stay visible to squeue/scontrol for 10 minutes (no accounting database here)
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
	# the clients (sinfo, sbatch, scontrol) read /etc/slurm/slurm.conf: point it here unless a site's is there
	mkdir -p /etc/slurm
	if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
		ln -sfn "$CONF" /etc/slurm/slurm.conf
	else
		log "/etc/slurm/slurm.conf is a site's: export SLURM_CONF=$CONF to reach this cluster"
	fi
}

start_munge() {
	local key=/etc/munge/munge.key
	if [ ! -s "$key" ]; then
		log "creating $key"
		mkdir -p /etc/munge
		dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
		chmod 400 "$key"
		chown munge:munge "$key" 2>/dev/null || true
	fi
	mkdir -p /run/munge /var/log/munge /var/lib/munge
	chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
	if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
		log "munged already runs (not ours: down leaves it)"
		return 0
	fi
	# munged refuses to run as root unless told; as the munge user it needs nothing more
	if id munge >/dev/null 2>&1; then
		chown munge:munge "$DIR/munge"
		runuser -u munge -- munged --pid-file "$DIR/munge/munged.pid"
	else
		munged --force --pid-file "$DIR/munge/munged.pid"
	fi
	for _ in $(seq 50); do
		[ -s "$DIR/munge/munged.pid" ] && break
		sleep 0.1
	done
	cp "$DIR/munge/munged.pid" "$DIR/munged.started"
}

wait_idle() {
	local state=""
	for _ in $(seq 120); do
		state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1 || true)
		[ "$state" = idle ] && return 0
		if [ "$state" = down ] || [ "$state" = drained ] || [ "$state" = "down*" ]; then
			scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
		fi
		sleep 0.5
	done
	die "the node $NODE is '${state:-not seen}' after 60 s (logs: $DIR/log/)"
}

up() {
	install_packages
	if [ -f "$DIR/slurmctld.started" ] && kill -0 "$(cat "$DIR/slurmctld.started")" 2>/dev/null; then
		log "already up ($DIR)"
		wait_idle
		return 0
	fi
	write_config
	start_munge
	export SLURM_CONF=$CONF
	# -c: a clean start (no jobs from an earlier run of this test cluster)
	slurmctld -c -f "$CONF"
	for _ in $(seq 50); do [ -s "$DIR/slurmctld.pid" ] && break; sleep 0.1; done
	cp "$DIR/slurmctld.pid" "$DIR/slurmctld.started"
	slurmd -f "$CONF"
	for _ in $(seq 50); do [ -s "$DIR/slurmd.pid" ] && break; sleep 0.1; done
	cp "$DIR/slurmd.pid" "$DIR/slurmd.started"
	wait_idle
	log "up: partition $PARTITION on $NODE ($(sinfo -h -o '%c CPUs, %m MB' | head -1)); SLURM_CONF=$CONF"
}

stop_pid() { # the pid file `up` left, its process only
	local file=$DIR/$1.started pid
	[ -f "$file" ] || return 0
	pid=$(cat "$file")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
		log "stopped $1 ($pid)"
	fi
	rm -f "$file"
}

down() {
	# the jobs still on this test cluster first (their steps would outlive slurmd)
	if [ -f "$DIR/slurmctld.started" ]; then
		SLURM_CONF=$CONF scancel --quiet --partition="$PARTITION" 2>/dev/null || true
		sleep 1
	fi
	stop_pid slurmd
	stop_pid slurmctld
	stop_pid munged
}

case "${1:-}" in
up) up ;;
down) down ;;
status) SLURM_CONF=$CONF sinfo || die "no cluster (scripts/slurm-local.sh up)" ;;
*)
	echo "usage: $0 up|down|status" >&2
	exit 2
	;;
esac
