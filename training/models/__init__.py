"""Recognition models over cached feature sequences, registered with the trainer by name."""

from cslr_pipe.training.models.acdr import build_acdr
from cslr_pipe.training.models.ctc import build_ctc
from cslr_pipe.training.models.diffsign import build_diffsign
from cslr_pipe.training.models.fusion import build_fusion
from cslr_pipe.training.models.twostream import build_twostream
from cslr_pipe.training.trainer import register_model

register_model("ctc", build_ctc)
register_model("acdr", build_acdr)
register_model("diffsign", build_diffsign)
register_model("fusion", build_fusion)
register_model("twostream", build_twostream)
