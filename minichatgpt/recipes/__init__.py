"""Command-line recipes: argument parsing, model/data set-up and ``fit`` for each stage."""
