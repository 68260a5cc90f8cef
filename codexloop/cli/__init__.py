"""The command line, headless runs and subcommands: front-end neutral, never imports Textual."""
