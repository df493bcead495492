"""One job from typed settings (the pipeline layer): :mod:`.objects` (the job's objects, built once: data, models,
the similarity pass's callback, the Trainer factory, the logger), :mod:`.steps` (weights, the similarity pass, the
analyses; ``run`` merges their facts into result.json once), :mod:`.facts` (what the pass and a failure add to
result.json), :mod:`.weights` (what ``init`` means and where weights come from), :mod:`.preflight` (checks
before any weights) and :mod:`.report` (result.json, the logger finished, the job's report)."""
