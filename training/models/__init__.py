"""Recognition models over cached feature sequences, built by name (`cslr-pipe train NAME`).

:data:`MODELS` names each built-in model's builder by import path, so building one imports its module
alone (and what that module needs); ``training.trainer.register_model`` adds a user's model at run time.
A builder is called as ``builder(train_config, input_dims, num_classes)`` and returns the model.
"""

from cslr_pipe.features.registry import Registry

MODELS = Registry("model", {
    "ctc": "cslr_pipe.training.models.ctc:build_ctc",
    "acdr": "cslr_pipe.training.models.acdr:build_acdr",
    "diffsign": "cslr_pipe.training.models.diffsign:build_diffsign",
    "fusion": "cslr_pipe.training.models.fusion:build_fusion",
    "twostream": "cslr_pipe.training.models.twostream:build_twostream",
})
