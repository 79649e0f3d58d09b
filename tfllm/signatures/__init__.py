"""SavedModel signatures: what every task's signatures share (`checks`: in-graph request
checks, byte limits, the fresh-process check) and the signatures every causal LM run gets
(`causal`: generate, score; `chat`: chat, chat_with_system), for the lm and chat tasks.
The other tasks' signatures are theirs (tfllm/tasks/*/saved_model.py); export.saved_model
writes them."""
