"""Chat-LLM backends (`openai`, `hf`) behind one cached, retrying `ChatLLM` interface (`base`), built from
`conf/llm/*.yaml` by `factory.build_llm`."""
