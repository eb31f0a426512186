"""Training: pure losses, the policy (LoRA, prefix-shared log-probs), reference strategies,
DataModules and one LightningModule per method.

Import from the submodules (``training.losses`` needs only torch; the others need Lightning):

- ``losses``       DPO sigmoid/IPO/soft-label, completion NLL, PPO clip, GAE, KL, whitening
- ``policy``       ``build_policy``, ``LoraSpec``, ``pack`` + ``completion_logps``, ``PolicyModule``
- ``reference``    ``Reference``: adapters off, frozen copy, cached log-probs
- ``datamodules``  ``PreferenceDataModule``, ``SFTDataModule``, ``ResumableLoader``
- ``sft``, ``dpo`` ``SFTModule``, ``DPOModule``
"""
