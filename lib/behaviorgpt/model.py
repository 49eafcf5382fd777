"""BehaviorGPT: a small decoder-only transformer over users' event sequences.

Each position of a sequence is one event. Its input vector is the sum of five embeddings (item,
category, event type, time gap bucket, session-start flag); the backbone adds learned positions.
The hidden state at position t predicts event t + 1 through three heads:

- next item: a mixture of a softmax over the item vocabulary and a copy (pointer)
  distribution over the items at positions <= t of the same user, with a learned gate. Above
  `sampled_softmax_threshold` real items, training replaces the full softmax by a sampled one
  (in-batch plus uniform negatives with log-Q correction); prediction always uses the full one;
- next category and next event type: softmaxes over their vocabularies.

The hidden state at a cutoff position also feeds three heads about the window after it (their
labels are built in `losses.py`): category interest (one logit per category, multi-label),
purchase (one logit) and return (one logit).

Shapes use `batch` for users, `seq` for positions, `dim` for `d_model`, `items` and
`categories` for vocabulary sizes. Sequences are right-padded with `PAD_ID`, so a causal
backbone never lets a real position attend to padding and needs no attention mask.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model

from behaviorgpt.data import Batch
from behaviorgpt.tokens import NUM_EVENT_TYPE_IDS, NUM_RESERVED_IDS, NUM_TIME_GAP_IDS, PAD_ID

EXACT_DISTANCES = 8
"""Distances (in events) below this get their own recency bucket. Longer ones share one
bucket per doubling, because the chance of a repeat falls off roughly with log distance."""


@dataclass(frozen=True, kw_only=True)
class BehaviorGPTConfig:
    """Sizes of one model. Vocabulary sizes count ids including the reserved ones."""

    num_items: int
    num_categories: int
    max_len: int
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    dropout: float = 0.1
    num_event_types: int = NUM_EVENT_TYPE_IDS
    num_time_gaps: int = NUM_TIME_GAP_IDS
    tie_item_embeddings: bool = True
    """Use the input item embedding as the output matrix of the vocabulary softmax."""
    sampled_softmax_threshold: int = 100_000
    """Real items above which training uses the sampled softmax."""
    sampled_negatives: int = 1024
    """Uniformly drawn negatives per step of the sampled softmax (plus the in-batch ones)."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                             f"choose n_head among the divisors of d_model")
        for name in ("num_items", "num_categories"):
            if getattr(self, name) <= NUM_RESERVED_IDS:
                raise ValueError(f"{name}={getattr(self, name)} leaves no real id: it must be "
                                 f"greater than the {NUM_RESERVED_IDS} reserved ids")

    @property
    def num_distance_buckets(self) -> int:
        return int(distance_bucket(torch.tensor(self.max_len - 1))) + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BehaviorGPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def distance_bucket(distance: Tensor) -> Tensor:
    """Map distances in events (>= 0, any shape) to recency bucket ids of the same shape.

    Distances 0..7 keep their own bucket; 8..15 share bucket 8, 16..31 bucket 9, and so on.
    """
    distance = distance.clamp(min=0)
    doublings = torch.log2(distance.clamp(min=1).float() / EXACT_DISTANCES).floor().long()
    return torch.where(distance < EXACT_DISTANCES, distance, EXACT_DISTANCES + doublings)


@dataclass
class NextEventPrediction:
    """Model output for the event after one chosen position of each row."""

    item_probabilities: Tensor
    """[batch, items] mixed vocabulary and copy probabilities; reserved ids get 0."""
    category_probabilities: Tensor
    """[batch, categories] softmax probabilities; reserved ids get 0."""
    hidden: Tensor
    """[batch, dim] final hidden state at the chosen position (the user embedding)."""
    event_type_probabilities: Tensor
    """[batch, event types] softmax probabilities of the next event's type."""
    category_interest: Tensor
    """[batch, categories] independent probabilities of engaging each category in the next
    window; reserved ids get 0."""
    purchase_probability: Tensor
    """[batch] probability of a purchase in the next window."""
    return_probability: Tensor
    """[batch] probability that the user returns (starts a new session) within the return
    horizon."""


class EventEmbedding(nn.Module):
    """Sum of the item, category, event type, time gap and session-start embeddings."""

    def __init__(self, config: BehaviorGPTConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.item = nn.Embedding(config.num_items, dim, padding_idx=PAD_ID)
        self.category = nn.Embedding(config.num_categories, dim, padding_idx=PAD_ID)
        self.event_type = nn.Embedding(config.num_event_types, dim, padding_idx=PAD_ID)
        self.time_gap = nn.Embedding(config.num_time_gaps, dim, padding_idx=PAD_ID)
        self.session_start = nn.Embedding(2, dim)

        # GPT-2's scale (std 0.02) instead of nn.Embedding's N(0, 1): the item matrix is also
        # the output layer, and unit-scale rows would start the softmax with huge logits.
        for table in (self.item, self.category, self.event_type, self.time_gap,
                      self.session_start):
            nn.init.normal_(table.weight, std=0.02)
            if table.padding_idx is not None:
                with torch.no_grad():
                    table.weight[table.padding_idx].zero_()

    def forward(self, batch: Batch) -> Tensor:
        """Return the input vectors `[batch, seq, dim]` of a batch's id streams `[batch, seq]`."""
        return (self.item(batch.item) + self.category(batch.category)
                + self.event_type(batch.event_type) + self.time_gap(batch.time_gap)
                + self.session_start(batch.session_start))


class CopyHead(nn.Module):
    """Pointer attention from a query position over the same user's earlier positions.

    A source position s is a copy candidate for query position t when s <= t and its item is a
    real vocabulary id. Its score is a scaled dot product of projected hidden states plus two
    learned biases: one for the distance t - s (bucketed), one for the event type at s (a
    carted item is revisited more often than a viewed one). A gate, computed from the query
    state, splits the probability between the vocabulary softmax and the copy distribution.
    """

    def __init__(self, config: BehaviorGPTConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.distance_bias = nn.Embedding(config.num_distance_buckets, 1)
        self.event_type_bias = nn.Embedding(config.num_event_types, 1)
        self.gate = nn.Linear(dim, 1)
        nn.init.zeros_(self.distance_bias.weight)
        nn.init.zeros_(self.event_type_bias.weight)

    def forward(self, hidden: Tensor, batch: Batch,
                query_positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Compute copy attention and gate for the query positions of each row.

        Args:
            hidden: `[batch, seq, dim]` backbone output.
            batch: the id streams `[batch, seq]` the hidden states came from.
            query_positions: `[batch, queries]` positions whose next event is predicted.

        Returns:
            attention: `[batch, queries, seq]` weights over source positions; each row sums to
                1, or is all zeros when the query has no copy candidate.
            log_gate_vocab: `[batch, queries]` log weight of the vocabulary softmax.
            log_gate_copy: `[batch, queries]` log weight of the copy distribution; -inf when the
                query has no copy candidate, so the mixture stays a distribution.
        """
        dim = hidden.shape[-1]
        query_states = torch.gather(
            hidden, 1, query_positions.unsqueeze(-1).expand(-1, -1, dim))

        # [batch, queries, seq] scores of every source position for every query.
        scores = self.query(query_states) @ self.key(hidden).transpose(1, 2) / math.sqrt(dim)
        source_positions = torch.arange(hidden.shape[1], device=hidden.device)
        distance = query_positions.unsqueeze(-1) - source_positions
        scores = scores + self.distance_bias(distance_bucket(distance)).squeeze(-1)
        scores = scores + self.event_type_bias(batch.event_type).squeeze(-1).unsqueeze(1)

        # A finite fill keeps softmax defined for queries without any candidate; the weights
        # are then zeroed so they add nothing.
        is_candidate = (distance >= 0) & (batch.item >= NUM_RESERVED_IDS).unsqueeze(1)
        scores = scores.masked_fill(~is_candidate, torch.finfo(scores.dtype).min)
        attention = torch.softmax(scores, dim=-1) * is_candidate

        gate_logit = self.gate(query_states).squeeze(-1)
        has_candidate = is_candidate.any(dim=-1)
        log_gate_vocab = torch.where(has_candidate, F.logsigmoid(gate_logit),
                                     torch.zeros_like(gate_logit))
        log_gate_copy = torch.where(has_candidate, F.logsigmoid(-gate_logit),
                                    torch.full_like(gate_logit, -math.inf))
        return attention, log_gate_vocab, log_gate_copy


class BehaviorGPT(nn.Module):
    """Decoder-only model with next-event heads and next-window heads (see the module doc)."""

    def __init__(self, config: BehaviorGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EventEmbedding(config)

        # Built from a config object, never downloaded. The backbone's own token embedding is
        # unused because we pass `inputs_embeds`, so it has one row and is frozen (DDP would
        # otherwise wait for a gradient that never comes).
        backbone_config = GPT2Config(
            vocab_size=1, n_positions=config.max_len, n_embd=config.d_model,
            n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout,
            embd_pdrop=config.dropout, attn_pdrop=config.dropout, bos_token_id=None,
            eos_token_id=None, use_cache=False, attn_implementation="sdpa")
        self.backbone = GPT2Model(backbone_config)
        self.backbone.wte.weight.requires_grad_(False)

        # With tying, the vocabulary softmax reuses the input item embedding as its output
        # matrix. It is applied with F.linear, so the state dict contains that matrix only once.
        self.item_output = None
        if not config.tie_item_embeddings:
            self.item_output = nn.Parameter(torch.empty(config.num_items, config.d_model))
            nn.init.normal_(self.item_output, std=0.02)
        self.item_bias = nn.Parameter(torch.zeros(config.num_items))
        self.copy_head = CopyHead(config)
        self.category_head = nn.Linear(config.d_model, config.num_categories)
        self.event_type_head = nn.Linear(config.d_model, config.num_event_types)
        self.interest_head = nn.Linear(config.d_model, config.num_categories)
        # Start every category at a prior of about 2 engaged categories per window, so the
        # summed binary cross-entropy starts near its converged scale instead of at
        # categories * log(2).
        real_categories = config.num_categories - NUM_RESERVED_IDS
        nn.init.constant_(self.interest_head.bias,
                          math.log(2.0 / max(real_categories - 2.0, 1.0)))
        self.purchase_head = nn.Linear(config.d_model, 1)
        self.return_head = nn.Linear(config.d_model, 1)

    @property
    def item_output_weight(self) -> Tensor:
        """`[items, dim]` output matrix of the vocabulary softmax."""
        return self.embed.item.weight if self.item_output is None else self.item_output

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters below the shared representation (embeddings and backbone)."""
        return [p for p in (*self.embed.parameters(), *self.backbone.parameters())
                if p.requires_grad]

    def forward(self, batch: Batch) -> Tensor:
        """Return the final hidden states `[batch, seq, dim]` of a right-padded batch."""
        inputs = self.embed(batch)
        return self.backbone(inputs_embeds=inputs).last_hidden_state

    def real_item_logits(self, states: Tensor) -> Tensor:
        """Vocabulary logits `[..., items - NUM_RESERVED_IDS]` of hidden states `[..., dim]`.

        Column j scores item id j + NUM_RESERVED_IDS. Leaving the reserved ids out of the
        matrix, instead of masking them, saves a copy of the largest tensor of a step.
        """
        return F.linear(states, self.item_output_weight[NUM_RESERVED_IDS:],
                        self.item_bias[NUM_RESERVED_IDS:])

    def sampled_item_log_probability(self, states: Tensor, targets: Tensor) -> Tensor:
        """Sampled-softmax estimate of log p_vocab(target) for states `[P, dim]`, targets `[P]`.

        Candidates are the P in-batch targets plus `sampled_negatives` uniform draws over the
        real items. Each candidate logit is corrected by minus the log of its expected count
        in the candidate list (log-Q correction, Yi et al. 2019): `n_j + S / V`, where `n_j` is
        how often item j is a target in this batch (the in-batch estimate of its sampling
        frequency), `S` the uniform draws and `V` the real items. Copies of a row's own target
        among the other candidates are masked, so the target is counted once.

        NOTE: in-batch negatives are per rank, so with more than one rank the candidates (and
        the loss) differ from a one-process run on the same global batch.
        """
        real_items = self.config.num_items - NUM_RESERVED_IDS
        real_targets = targets - NUM_RESERVED_IDS
        uniform = torch.randint(real_items, (self.config.sampled_negatives,),
                                device=states.device)
        candidates = torch.cat([real_targets, uniform])

        logits = F.linear(states, self.item_output_weight[NUM_RESERVED_IDS:][candidates],
                          self.item_bias[NUM_RESERVED_IDS:][candidates])
        batch_counts = torch.bincount(real_targets, minlength=real_items)[candidates]
        expected_count = batch_counts.float() + self.config.sampled_negatives / real_items
        logits = logits - torch.log(expected_count)

        # Column p is row p's positive; any other column holding the same item is masked.
        positive = torch.arange(len(targets), device=states.device)
        same_item = real_targets.unsqueeze(1) == candidates.unsqueeze(0)
        same_item[positive, positive] = False
        logits = logits.masked_fill(same_item, torch.finfo(logits.dtype).min)
        return -F.cross_entropy(logits, positive, reduction="none")

    def uses_sampled_softmax(self) -> bool:
        return (self.training and self.config.num_items - NUM_RESERVED_IDS
                > self.config.sampled_softmax_threshold)

    def real_category_logits(self, states: Tensor) -> Tensor:
        """Category logits `[..., categories - NUM_RESERVED_IDS]`; column j is id j + 4."""
        return F.linear(states, self.category_head.weight[NUM_RESERVED_IDS:],
                        self.category_head.bias[NUM_RESERVED_IDS:])

    def next_item_log_likelihood(self, hidden: Tensor, batch: Batch, targets: Tensor,
                                 target_mask: Tensor) -> Tensor:
        """Return log p(target) under the mixed next-item distribution, one value per target.

        Args:
            hidden: `[batch, seq, dim]` output of `forward(batch)`.
            batch: the batch the hidden states came from.
            targets: `[batch, seq]` item id of the event after each position.
            target_mask: `[batch, seq]` bool, True where the target is trained on.

        Returns:
            `[targets]` log-likelihoods, in the row-major order of `target_mask`.

        The vocabulary logits are computed only at the masked positions, because the
        `[positions, items]` matrix is the largest tensor of a training step.
        """
        seq_len = hidden.shape[1]
        query_positions = torch.arange(seq_len, device=hidden.device).expand(hidden.shape[0], -1)
        attention, log_gate_vocab, log_gate_copy = self.copy_head(hidden, batch, query_positions)

        # Copy probability of the target: attention summed over the positions that hold it.
        # [batch, seq, seq] -> [batch, seq]
        holds_target = batch.item.unsqueeze(1) == targets.unsqueeze(-1)
        copy_probability = (attention * holds_target).sum(dim=-1)[target_mask]

        # Cross-entropy is the fused form of -log_softmax(logits)[target].
        if self.uses_sampled_softmax():
            log_vocab_target = self.sampled_item_log_probability(hidden[target_mask],
                                                                 targets[target_mask])
        else:
            log_vocab_target = -F.cross_entropy(self.real_item_logits(hidden[target_mask]),
                                                targets[target_mask] - NUM_RESERVED_IDS,
                                                reduction="none")

        # The clamp keeps log() finite where the target is not in the history. That term is
        # then about 1e-30 times the copy gate, with zero gradient.
        return torch.logaddexp(
            log_gate_vocab[target_mask] + log_vocab_target,
            log_gate_copy[target_mask] + torch.log(copy_probability.clamp(min=1e-30)))

    def predict_next_event(self, batch: Batch, positions: Tensor) -> NextEventPrediction:
        """Predict the event after `positions` (`[batch]`, one per row) of a batch.

        Callers run it under `torch.inference_mode()` and with the model in eval mode.
        """
        hidden = self(batch)
        attention, log_gate_vocab, log_gate_copy = self.copy_head(
            hidden, batch, positions.unsqueeze(1))
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]

        # Reserved ids get probability 0: pad the real-id softmax on the left.
        vocab = F.pad(torch.softmax(self.real_item_logits(state), dim=-1), (NUM_RESERVED_IDS, 0))
        copy = torch.zeros_like(vocab).scatter_add_(1, batch.item, attention.squeeze(1))
        items = log_gate_vocab.exp() * vocab + log_gate_copy.exp() * copy

        categories = F.pad(torch.softmax(self.real_category_logits(state), dim=-1),
                           (NUM_RESERVED_IDS, 0))
        interest = torch.sigmoid(self.interest_head(state))
        interest[:, :NUM_RESERVED_IDS] = 0
        return NextEventPrediction(
            item_probabilities=items, category_probabilities=categories, hidden=state,
            event_type_probabilities=torch.softmax(self.event_type_head(state), dim=-1),
            category_interest=interest,
            purchase_probability=torch.sigmoid(self.purchase_head(state)).squeeze(-1),
            return_probability=torch.sigmoid(self.return_head(state)).squeeze(-1))

    def category_attribution(self, batch: Batch, positions: Tensor,
                             categories: Tensor) -> Tensor:
        """Attribute the predicted categories to the input events by gradient x input.

        Args:
            batch: the users' id streams `[batch, seq]`.
            positions: `[batch]` position whose next event is predicted (the last input).
            categories: `[batch, k]` category ids to explain for each row.

        Returns:
            `[batch, k, seq]` attributions: for category c and position s, the dot product of
            the gradient of log p(c) with the summed input embedding at s, and that embedding.
            Positive values raised the category's log-probability, negative ones lowered it.
            Padding positions after `positions` get exactly 0 (the backbone is causal).

        Runs with gradients on the inputs only, one backward pass per explained category;
        the parameters are left untouched. Call it with the model in eval mode.
        """
        inputs = self.embed(batch).detach().requires_grad_(True)
        hidden = self.backbone(inputs_embeds=inputs).last_hidden_state
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]

        # log p(c) instead of the raw logit, so that an event which raises every category
        # alike (for example sheer activity) is not evidence for any one of them.
        log_probabilities = torch.log_softmax(self.real_category_logits(state), dim=-1)
        chosen = log_probabilities.gather(1, categories - NUM_RESERVED_IDS)

        # Rows do not interact, so the gradient of the batch sum gives each row's gradient.
        attributions = []
        for column in range(categories.shape[1]):
            (gradient,) = torch.autograd.grad(chosen[:, column].sum(), inputs,
                                              retain_graph=column < categories.shape[1] - 1)
            attributions.append((gradient * inputs).sum(dim=-1))
        return torch.stack(attributions, dim=1).detach()
