"""Model providers: chat, embeddings and transcription, over the OpenAI HTTP API or offline."""
