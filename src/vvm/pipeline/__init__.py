"""One job from typed settings (the pipeline layer): :mod:`.steps` (build, check, weights, the similarity pass,
the analyses, the result), :mod:`.weights` (what ``init`` means and where weights come from), :mod:`.preflight`
(checks before any weights) and :mod:`.report` (result.json, the logger finished, the job's report)."""
