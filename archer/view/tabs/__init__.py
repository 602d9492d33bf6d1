"""The viewer's tabs: each a `TabPane` that owns its widgets, its state and their handlers.

The app (`archer.view.app`) keeps the selection (trace, step, response), runs every read in a
worker and routes results and keys to these tabs; a tab asks the app for a new selection by
posting a message (`archer.view.messages`), never by reaching into another tab.
"""
