"""A run's stages, above the engines: prepare -> experiment (the phases) -> finish, and the preflight checks before
them. They call the engines (trainer.engines.base.Engine) and the policy; nothing below calls them back."""
