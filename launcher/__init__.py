"""The user's side of ftlaunch: CLI, config loading, data preparation, submission."""
