"""Inference on a trained model, run by `ftlaunch predict` and `ftlaunch generate` as child
processes (`python -m trainer.infer.predict`, `python -m trainer.infer.generate`): the launcher
never imports torch."""
