"""archer's core: config, data, rewards, algorithms, engines and traces (shared by both engines)."""
