"""Runnable examples: ``python -m robustagg.examples.ddp_train`` (DDP with the robust communication hook)."""
