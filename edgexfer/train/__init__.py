"""Training stages: fine-tuning (and later distillation, adaptation, fusion)."""
