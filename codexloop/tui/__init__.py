"""The full-screen app (Textual): a thin App, the main screen, its panes, dialogs and state."""
