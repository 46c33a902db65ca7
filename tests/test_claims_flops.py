"""The claims run's FLOP counts equal the formulas for what the models compute, attention included."""
import torch

from benchmarks.claims import flop_counter
from memkernels.models import TransformerXL, txl_mnist
from memkernels.models.layers import Attention

B, L, S, D, H = 2, 8, 12, 32, 4


def test_sdpa_attention_is_counted_on_the_cpu():
    """FlopCounterMode alone counts none of the CPU's fused attention kernel."""
    attention = Attention(D, H, dropout=0.0)
    x, source = torch.randn(B, L, D), torch.randn(B, S, D)
    with torch.no_grad(), flop_counter() as counter:
        attention(x, source)
    projections = 2 * B * L * D * D + 2 * B * S * D * 2 * D + 2 * B * L * D * D
    scores_and_values = 4 * B * L * S * D
    assert counter.get_total_flops() == projections + scores_and_values


def test_transformer_xl_body_flops_match_the_formula_with_a_full_cache():
    mem_len, d_head, d_ff, layers = 20, 8, 64, 2
    with torch.device("meta"):
        model = TransformerXL(txl_mnist(vocab_size=50, d_model=D, n_heads=H, d_head=d_head, d_ff=d_ff,
                                        n_layers=layers, mem_len=mem_len, fixed_cache=True, dropout=0.0)).eval()
    keys, inner = mem_len + L, H * d_head
    per_layer = (2 * B * keys * D * 3 * inner      # q, k, v of [cache; segment]
                 + 2 * keys * D * inner            # relative position projection: once per batch
                 + 3 * 2 * B * H * L * keys * d_head  # content scores, position scores, probabilities @ values
                 + 2 * B * L * inner * D           # output projection
                 + 2 * 2 * B * L * D * d_ff)       # feed-forward
    state = model.initial_state(B, L)
    with torch.no_grad(), flop_counter() as counter:
        model.body(torch.zeros(B, L, dtype=torch.long, device="meta"), state)
    assert counter.get_total_flops() == layers * per_layer
