"""The debate-training study (``scripts/debate_training.sh``): SFT, best-of-N self-play, iterative
DPO and an evaluation tournament of every checkpoint, then one report across them.

``plan.py`` turns a study config (``configs/study/*.yaml``) into one ordinary config per stage;
``report.py`` reads the evaluation tournament and writes the study's metrics.json, report.md
and plots; ``cli.py`` is ``python -m debate_lightning study {plan,get,report}``. The stages
themselves are the package's own commands (``fit``, ``tournament``, ``rejudge``), run by the
shell script so each can be rerun by hand.
"""
