"""forgetguard inside other tools: :mod:`.transformers` (a ``Trainer`` / TRL callback)."""
