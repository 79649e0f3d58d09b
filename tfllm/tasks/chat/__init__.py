"""The chat task: causal LMs fine-tuned on conversations, all weights or LoRA adapters.

    tfllm finetune --task chat      fine-tuning (finetune.py; conversations from data.py),
                                    --resume after a kill
    tfllm chat / merge              talking with any causal LM run (commands.py), a LoRA
                                    run written as a plain run
    exports                         a causal LM's (tfllm.signatures: generate, score, chat,
                                    chat_with_system), the template in LiteRT-LM bundles

A chat run says `"objective": "chat"` and holds its chat template, its base run and, for
LoRA, the adapter (`adapter.safetensors`) instead of model.keras.
"""

from __future__ import annotations

from tfllm.tasks.base import Task, TaskError


class ChatTask(Task):
    name = "chat"
    objectives = ("chat",)
    family = "decoder"
    summary = "a chat fine-tune of a causal LM"

    def finetune(self, args):
        from tfllm.tasks.chat.commands import finetune_chat

        return finetune_chat(args)

    def evaluate(self, args):
        import json

        from tfllm.training import CausalWindows, evaluate_windows, window_score_lines

        if not args.data:
            raise TaskError(f"{args.run} is a chat run: its validation loss over the replies "
                            "is in metrics.jsonl; pass --data to measure language-model loss "
                            "on a text corpus")
        result = evaluate_windows(CausalWindows, args.run, args.data, args.batch_size,
                                  args.eval_steps, args.weights, args.text_feature,
                                  args.tfds_manual_dir, args.tfds_data_dir)
        print("\n".join(window_score_lines(result)))
        print(json.dumps(result))

    def saved_model_signatures(self, model, config, jit_compile, max_batch, json_schemas=None,
                               tools=None):
        from tfllm.signatures.causal import signatures  # shared with the lm task

        return signatures(model, config, jit_compile, max_batch, json_schemas, tools)

    def heldout_texts(self, config, split="val"):
        """The run's own conversations (its validation or training split, as fine-tuning
        drew them), rendered by its template: the text the model was tuned on."""
        from tfllm.tasks.chat.data import ChatData
        from tfllm.tokenizers.chat_template import BOS_MARK, template_of

        d = config.get("chat_data")
        if not d or not config.get("data"):
            return None
        chats = ChatData(config["data"]["spec"], d["prompt_column"], d["response_column"],
                         d["prompt_template"], d["system"],
                         seed=(config.get("finetune") or {}).get("seed", 0),
                         template=config["chat"]["template"])
        template = template_of(config["chat"])
        # Exporters read a few dozen windows: 512 conversations hold them many times over,
        # and each render is a call into the template's sandbox. Windows are plain text:
        # the BOS mark is left out, not spelled.
        return [template.render(c).replace(BOS_MARK, "")
                for c in (chats.train if split == "train" else chats.val)[:512]]

    def chat_config(self, config, tokenizer):
        from tfllm.tokenizers.chat_template import usable_chat_config

        return usable_chat_config(config, tokenizer)


TASK = ChatTask()
