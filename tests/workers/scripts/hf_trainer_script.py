"""A Hugging Face Trainer script as its authors write them: HfArgumentParser over TrainingArguments (so it takes
--deepspeed, --output_dir, --report_to ... and the launcher's --local_rank), a small causal LM built from a config
(no download), random tokens as data. Nothing in it knows the control plane."""

from dataclasses import dataclass, field

import torch
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments


@dataclass
class ModelArguments:
    n_layer: int = field(default=2)
    n_embd: int = field(default=64)
    vocab_size: int = field(default=512)
    seq_len: int = field(default=32)
    samples: int = field(default=256)


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq_len: int, vocab: int):
        g = torch.Generator().manual_seed(0)
        # A learnable pattern (each sequence counts up from a random start), so the loss falls.
        starts = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (starts + torch.arange(seq_len)) % vocab

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main():
    model_args, training_args = HfArgumentParser((ModelArguments, TrainingArguments)).parse_args_into_dataclasses()
    config = GPT2Config(
        n_layer=model_args.n_layer,
        n_embd=model_args.n_embd,
        n_head=4,
        vocab_size=model_args.vocab_size,
        n_positions=model_args.seq_len,
    )
    model = GPT2LMHeadModel(config)
    data = RandomTokens(model_args.samples, model_args.seq_len, model_args.vocab_size)
    trainer = Trainer(model=model, args=training_args, train_dataset=data)
    trainer.train()
    if torch.distributed.is_initialized():
        # Every rank reaches the end before any leaves: a rank whose peers had gone aborted in gloo's teardown.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
