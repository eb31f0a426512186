"""Online objectives: training on debates the current policy plays, judged by a frozen judge.

Import from the submodules, in the order they build on each other:

- ``records``     ``Candidate``, ``SpeechSample``, ``Rollout``; ``preference_pairs``, ``trajectories``
- ``debater``     ``RolloutDebater`` (best-of-N, records token ids), ``play_rollout``
- ``datamodule``  ``DebateRolloutDataModule``: one rollout per epoch with the live policy, resumable
- ``base``        ``OnlineObjectiveModule``: the shared base (rollout hooks, metrics, optimiser)
- ``online_dpo``  ``OnlineDPOModule``
- ``ppo``         ``PPOModule`` (and ``response_forward``)
"""
