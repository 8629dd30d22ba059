"""Action tokenizer (LA-Tok) recipe config: registers ``type: action_tokenizer``."""
