"""Training: pure losses, the policy (LoRA, prefix-shared log-probs), reference strategies,
DataModules and one LightningModule per method.

Import from the submodules (``training.losses`` needs only torch; the others need Lightning):

- ``losses``       DPO sigmoid/IPO/soft-label, completion NLL, PPO clip, GAE, KL, whitening, probe BCE
- ``policy``       ``build_policy``, ``LoraSpec``, ``PolicyConfig``, ``OptimConfig``,
                   ``pack`` + ``completion_logps``, ``PolicyModule``
- ``reference``    ``Reference``: adapters off, frozen copy, cached log-probs; ``initial_model_generator``
- ``datamodules``  ``PreferenceDataModule``, ``SFTDataModule``, ``ResumableLoader``
- ``sft``, ``dpo`` ``SFTModule``, ``DPOModule`` (and ``dpo_objective``, shared with online DPO)
- ``probe``        ``ProbeJudgeModule``: linear probes on a judge's activations, one per layer
- ``activation_data``  ``ActivationDataModule``: activation stores, or rounds and activations made on the fly
- ``online/``      rollouts with the live policy and the objectives trained on them (online DPO, PPO)
- ``callbacks``    ``JudgeEvaluation``, ``TournamentValidation``
"""
