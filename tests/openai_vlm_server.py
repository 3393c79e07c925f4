"""A small OpenAI-compatible chat-completions server over a transformers vision-language model, for tests.

vLLM cannot run here (no GPU, no CPU wheel within CI's budget), so this implements the part of its API the
`vlm_judge` scorer uses, with the same model class a real judge uses (Qwen2-VL, random weights):
    GET  /v1/models
    POST /v1/chat/completions   messages with image_url (base64 data URL) + text parts; greedy decoding;
                                logprobs / top_logprobs per generated token as OpenAI returns them.

    python tests/openai_vlm_server.py --model-dir DIR [--port 0]   # first stdout line: "... at http://HOST:PORT"

`build_tiny_vlm(path)` writes the random model with its processor: a byte-level BPE tokenizer trained
offline (Qwen2's kind, with Qwen's special tokens), Qwen2-VL's image processor and a Qwen-style chat template.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from PIL import Image

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["Does this image match the description? Answer Yes or No.", "Yes", "No", "yes no YES NO", "a red circle", "two blue squares"]


def build_tiny_vlm(path: Path, seed: int = 0) -> Path:
    """Write a random ~0.1M-parameter Qwen2-VL and its processor to `path` (loadable with from_pretrained)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # Images are resized to 56x56 pixels: 4x4 patches of 14, merged 2x2 into 4 tokens.
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _chat_to_hf(messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """OpenAI messages (text and image_url data-URL parts) -> transformers chat messages and the PIL images."""
    converted, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content:
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image_url":
                header, _, data = part["image_url"]["url"].partition(",")
                if not header.startswith("data:image/") or not header.endswith(";base64"):
                    raise ValueError("only base64 data URLs are supported")
                images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                parts.append({"type": "image"})
            else:
                raise ValueError(f"unsupported content part {part['type']!r}")
        converted.append({"role": message["role"], "content": parts})
    return converted, images


class VLMEndpoint:
    def __init__(self, model_dir: Path, name: str):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = name
        self.processor = AutoProcessor.from_pretrained(model_dir, use_fast=True)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        self.lock = threading.Lock()  # one forward at a time, like a single-sequence engine

    def _token(self, token_id: int, logprob: float) -> dict:
        text = self.processor.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    @torch.no_grad()
    def complete(self, body: dict) -> dict:
        messages, images = _chat_to_hf(body["messages"])
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        max_tokens = int(body.get("max_tokens") or 16)
        with self.lock:
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
        new_ids = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        choice = {"index": 0, "message": {"role": "assistant", "content": self.processor.tokenizer.decode(new_ids, skip_special_tokens=True)},
                  "finish_reason": "stop" if new_ids and new_ids[-1] == self.model.config.eos_token_id else "length", "logprobs": None}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            content = []
            for token_id, logits in zip(new_ids, out.logits):
                logprobs = torch.log_softmax(logits[0].float(), dim=-1)
                top = torch.topk(logprobs, k) if k else None
                entry = self._token(token_id, float(logprobs[token_id]))
                entry["top_logprobs"] = [self._token(int(i), float(v)) for v, i in zip(top.values, top.indices)] if top else []
                content.append(entry)
            choice["logprobs"] = {"content": content}
        return {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": inputs["input_ids"].shape[1], "completion_tokens": len(new_ids)}}


def make_handler(endpoint: VLMEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": endpoint.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"unknown path {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            try:
                self._send(200, endpoint.complete(body))
            except (KeyError, ValueError) as error:
                self._send(400, {"error": {"message": str(error)}})

        def log_message(self, *args) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--name", default="tiny-qwen2-vl")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(VLMEndpoint(args.model_dir, args.name)))
    server.daemon_threads = True
    print(f"serving {args.name} at http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
