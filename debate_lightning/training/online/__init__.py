"""Online objectives: training on debates the current policy plays, judged by a frozen judge.

Import from the submodules, in the order they build on each other:

- ``records``     ``Candidate``, ``SpeechSample``, ``Rollout``; ``preference_pairs``, ``trajectories``,
                  ``candidate_groups``
- ``debater``     ``RolloutDebater`` (best-of-N, records token ids), ``play_rollout`` (candidates scored
                  right after the speech or at the end of their own continued round)
- ``datamodule``  ``DebateRolloutDataModule``: one rollout per epoch with the live policy, resumable
- ``base``        ``OnlineObjectiveModule``: the shared base (rollout hooks, metrics, optimiser)
- ``online_dpo``  ``OnlineDPOModule``
- ``ppo``         ``PPOModule`` (and ``response_forward``)
- ``grpo``        ``GRPOModule``: group baselines over candidate speeches (GRPO, Dr. GRPO, DAPO, RLOO)
"""
