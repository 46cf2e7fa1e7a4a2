"""Which tensor of a model's output the metrics compare: never a loss computed beside the outputs."""
import pytest
import torch

from mixprec.batches import output_tensor


def test_the_main_output_is_the_logits_not_a_loss_beside_them():
    logits, hidden, loss = torch.randn(4, 3), torch.randn(4, 8), torch.tensor(0.7)
    assert output_tensor(logits) is logits
    assert output_tensor({"loss": loss, "logits": logits}) is logits  # a dict with a logits key
    assert output_tensor({"loss": loss, "scores": hidden}) is hidden  # the first tensor that is not a scalar
    assert output_tensor((loss, logits)) is logits
    assert output_tensor({"last_hidden_state": hidden, "pooled": logits}) is hidden
    assert output_tensor((loss,)) is loss  # only a scalar: that is the output

    class Output:  # an attribute, as Hugging Face's ModelOutput holds it
        def __init__(self):
            self.loss, self.logits = loss, logits

    assert output_tensor(Output()) is logits
    with pytest.raises(TypeError, match="cannot find the output tensor"):
        output_tensor(("text", logits))


def test_named_tuple_and_dataclass_outputs_name_their_main_tensor_and_the_heads_left_unmeasured():
    import collections
    import dataclasses
    from mixprec.batches import outputs_note
    logits, score, boxes = torch.randn(4, 3), torch.randn(4, 1), torch.randn(4, 4)
    Out = collections.namedtuple("Out", "logits score")

    @dataclasses.dataclass
    class Pred:
        boxes: torch.Tensor
        classes: torch.Tensor

    assert output_tensor(Out(logits, score)) is logits
    assert ".logits of shape (4, 3)" in outputs_note(Out(logits, score))  # score's layers measured as free
    assert output_tensor(Pred(boxes, logits)) is boxes
    assert "2 output tensors" in outputs_note(Pred(boxes, logits)) and ".boxes" in outputs_note(Pred(boxes, logits))
    assert outputs_note(Pred(boxes, torch.tensor(0.5))) is None  # one tensor beside a scalar: nothing unmeasured
