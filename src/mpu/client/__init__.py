"""The client (data owner): read the published copies, unlearn on each, return the updates.

Imports nothing from ``mpu.server``: what the client knows of the server is the published files.
A copy is a plain Hugging Face model directory, so any other training tool works on it too.
"""

# Which round's copy K is the reference model of reference-model methods (NPO, DPO, UNDIAL, KL retain)
# over several rounds: round 1's (fixed, like noise-free unlearning) or each round's own.
REFERENCE_MODEL_ROUNDS = ("first", "round")
