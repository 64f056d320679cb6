"""Chat: accepting a patient's message (`service`), the reply's run (`run`, `relay`,
`stream`), the prompt, the socket handlers and the original REST route."""
