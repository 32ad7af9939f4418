"""mpu: privacy-preserving LLM unlearning with Multiple Perturbed copies (arXiv 2602.23798).

The package is organised by who does what in the protocol:

- ``server/``     the model owner: secrets, noise, Pre-Process (publish), validation,
                  Post-Process (aggregate), round state;
- ``protocol/``   what both parties share: the file layout, the publication and update manifests,
                  the per-round key schedule (``RoundKeys``);
- ``client/``     the data owner: load a published copy, unlearn on it, write the update;
- ``reparam/``    secret function-preserving transforms, one adapter per architecture family;
- ``methods/``    unlearning methods on a shared HF Trainer base (know nothing of MPU);
- ``checkpoint/`` streaming sharded safetensors in and out, checksums, atomic writes;
- ``data/``       QA files, tokenizers, the built-in benchmark;
- ``eval/``       metrics and benchmark suites;
- ``audit/``      what a curious client can recover from the copies;
- ``cli/``        the ``mpu`` command on top.
"""

__version__ = "0.1.0"
