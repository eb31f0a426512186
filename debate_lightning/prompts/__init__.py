"""Prompt sets as YAML plus one renderer. Add a set by dropping a YAML file beside these or
passing a path; no code changes needed."""

from debate_lightning.prompts.render import PromptSet, load_prompt_set

__all__ = ["PromptSet", "load_prompt_set"]
