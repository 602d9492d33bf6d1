"""The generation layer below every engine: the rollout record (`batch`), HF generation
(`generation`), prompt encoding and sampling (`prompts`), and the step -> trace record (`record`).

agent/, evaluation/ and both engines import from here; nothing here imports an engine.
Submodules are imported on use (torch is heavy; `record` needs only numpy and pyarrow).
"""
