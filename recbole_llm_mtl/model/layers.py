"""Small named building blocks of LLMMTL."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoEAdaptor(nn.Module):
    """Mixture of parametric-whitening experts (UniSRec, Hou et al., KDD 2022): expert k
    maps a frozen text vector x to (x - b_k) W_k and a softmax gate mixes the experts, so
    different item groups can use different projections into the recommendation space.

    All experts run as one matrix product: (x - b_k) W_k = x W_k - b_k W_k.
    """

    def __init__(self, in_dim, out_dim, n_experts, dropout):
        super().__init__()
        self.n_experts, self.out_dim = n_experts, out_dim
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.randn(in_dim, n_experts * out_dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_experts, in_dim))
        self.gate = nn.Linear(in_dim, n_experts, bias=False)
        nn.init.zeros_(self.gate.weight)  # start as a uniform average of experts

    def forward(self, x):
        gates = F.softmax(self.gate(x), dim=-1).unsqueeze(-1)  # (..., E, 1)
        w = self.weight.view(-1, self.n_experts, self.out_dim)
        shift = torch.einsum("ei,eio->eo", self.bias, w.transpose(0, 1))  # b_k W_k
        experts = (self.dropout(x) @ self.weight).view(*x.shape[:-1], self.n_experts, self.out_dim)
        return (gates * (experts - shift)).sum(-2)


class CausalTransformer(nn.Module):
    """Behaviour extractor: a causal Transformer over the history item representations.

    Position t attends to items 0..t only, so every position is a valid training example
    of "next item after t" and no future item reaches its input.
    """

    def __init__(self, hidden, n_layers, n_heads, inner, dropout, max_len):
        super().__init__()
        self.position = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, n_heads, inner, dropout, activation="gelu",
                                           batch_first=True, norm_first=False)
        # enable_nested_tensor only matters with key padding masks, which causal right
        # padding does not need (padded positions are never read).
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

    def forward(self, items):
        length = items.size(1)
        pos = torch.arange(length, device=items.device)
        x = self.dropout(self.norm(items + self.position(pos)))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=items.device,
                                                             dtype=x.dtype)
        return self.encoder(x, mask=mask, is_causal=True)


def causal_mean(x):
    """Running mean over the sequence axis: out[:, t] = mean(x[:, :t+1]).

    A (L x L) lower-triangular averaging matrix: one batched matmul, faster than cumsum on CPU.
    """
    length = x.size(1)
    avg = torch.tril(torch.ones(length, length, device=x.device, dtype=x.dtype))
    avg = avg / avg.sum(1, keepdim=True)
    return avg @ x


class UserProfileExtractor(nn.Module):
    """H_u from the user-text vector at each position (if any) and the running semantic
    summary of the items seen so far."""

    def __init__(self, sem_dim, text_dim, hidden, dropout):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden) if text_dim else None
        self.mlp = nn.Sequential(nn.Linear(sem_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, history_semantics, user_text=None):
        h = self.mlp(history_semantics)
        if self.text_proj is not None and user_text is not None:
            h = h + self.text_proj(user_text)  # (B, L, d): one text per position
        return self.norm(h)


class SimilarityScorer(nn.Module):
    """f_r(H_u, H_v, H_a): relevance logit of each item for each user state.

    ``mlp``: an MLP reasons over (H_a, H_u, H_a * H_u) and corrects the user query
    H_a + H_u, which is matched to H_v by a (cosine) inner product. Its last layer starts
    at zero, so training starts from the ``dot`` scorer and the MLP only adds what helps.
    Keeping the item side linear makes full ranking a single matrix product (an MLP over
    every user-item pair would cost users x items x hidden work and, per Rendle et al.,
    RecSys 2020, ranks no better than a dot product). ``dot``: the query is H_a + H_u.
    """

    def __init__(self, hidden, mode, dropout, temperature, normalize):
        super().__init__()
        self.mode = mode
        self.temperature = temperature
        self.normalize = normalize
        if mode == "mlp":
            self.mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, hidden))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def query(self, h_a, h_u):
        q = h_a + h_u
        if self.mode == "mlp":
            q = q + self.mlp(torch.cat([h_a, h_u, h_a * h_u], dim=-1))
        return F.normalize(q, dim=-1) if self.normalize else q

    def items(self, h_v):
        return F.normalize(h_v, dim=-1) if self.normalize else h_v

    def logits(self, query, items):
        """(..., d) x (N, d) -> (..., N) logits; sigmoid of these is the score."""
        return query @ items.t() / self.temperature

    def pair_logits(self, query, items):
        """(..., d) x (..., d) -> (...) logits of matched pairs."""
        return (query * items).sum(-1) / self.temperature


class TaskWeighting(nn.Module):
    """Sum of task losses with fixed weights, or with learned homoscedastic-uncertainty
    weights (Kendall et al., CVPR 2018): w_k * (exp(-s_k) L_k + s_k)."""

    def __init__(self, weights, mode):
        super().__init__()
        self.mode = mode
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float))
        if mode == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(weights)))

    def forward(self, losses):
        out = []
        for k, loss in enumerate(losses):
            if self.mode == "uncertainty":
                loss = torch.exp(-self.log_vars[k]) * loss + self.log_vars[k]
            out.append(self.weights[k] * loss)
        return out


class TokenizedTexts(nn.Module):
    """One padded text per item (token ids, attention mask, which items have none): what a
    fine-tuned language model re-reads each step. Buffers move with the model and are not
    saved (the data rebuilds them)."""

    def __init__(self, input_ids, attention_mask, empty):
        super().__init__()
        self.register_buffer("input_ids", input_ids, persistent=False)
        self.register_buffer("attention_mask", attention_mask, persistent=False)
        self.register_buffer("empty", empty, persistent=False)
