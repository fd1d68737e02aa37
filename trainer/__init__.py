"""What runs inside each worker: model, data, engine and the training loop."""
