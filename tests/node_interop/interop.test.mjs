// The official openai npm client reading chatproxy's streams, as a Node or browser front end would.
//
// Driven by tests/test_node_interop.py, which starts the site and a fake upstream, scripts the
// upstream's reply, and runs one test of this file by name with these variables:
//   CHATPROXY_URL, CHATPROXY_USERNAME, CHATPROXY_PASSWORD  the site and an account on it
//   CHATPROXY_EXPECTED  JSON: {"pieces": [...], "usage": {...}, "min_spread_ms": n}
//                       or {"pieces": [...before the error], "error": "message"}
//                       or {"request": {...the body to send}, "tool_calls": [...as reassembled], ...}
//                       (the Responses tests: {"request", "text", "usage", "function_calls", "error", ...})
import assert from "node:assert/strict";
import { test } from "node:test";

import { APIError } from "openai";
import OpenAI, { AuthenticationError, BadRequestError, NotFoundError } from "openai";
import { Stream } from "openai/core/streaming";
import { ChatCompletionStream } from "openai/lib/ChatCompletionStream";
import { toResponseInputItems } from "openai/lib/responses/ResponseInputItems";
import { ResponseStream } from "openai/lib/responses/ResponseStream";

function setting(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run this through tests/test_node_interop.py`);
  return value;
}

const SITE = setting("CHATPROXY_URL");
const EXPECTED = JSON.parse(setting("CHATPROXY_EXPECTED"));

/** Cookies kept across requests, as a browser keeps them. */
class CookieJar {
  #cookies = new Map();

  keep(response) {
    for (const header of response.headers.getSetCookie()) {
      const [pair] = header.split(";");
      const [name, ...value] = pair.split("=");
      this.#cookies.set(name.trim(), value.join("="));
    }
  }

  get(name) {
    return this.#cookies.get(name);
  }

  header() {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join("; ");
  }
}

/** Log in through the login form, exactly as a browser does, and return the session's cookies. */
async function logIn() {
  const jar = new CookieJar();
  const loginUrl = `${SITE}/accounts/login/`;
  const page = await fetch(loginUrl);
  assert.equal(page.status, 200);
  jar.keep(page);
  const token = (await page.text()).match(/name="csrfmiddlewaretoken" value="([^"]+)"/)?.[1];
  assert.ok(token && jar.get("csrftoken"), "the login page set no CSRF token");

  const form = new URLSearchParams({
    username: setting("CHATPROXY_USERNAME"),
    password: setting("CHATPROXY_PASSWORD"),
    csrfmiddlewaretoken: token,
  });
  const response = await fetch(loginUrl, {
    method: "POST",
    body: form,
    headers: { Cookie: jar.header(), Referer: loginUrl },
    redirect: "manual",
  });
  assert.equal(response.status, 302, "the login form refused the credentials");
  jar.keep(response);
  assert.ok(jar.get("sessionid"), "logging in set no session cookie");
  return jar;
}

/** POST a JSON body to one of the site's streaming endpoints as the logged-in browser would; the 200 response. */
async function postStream(path, jar, accept, body) {
  const response = await fetch(`${SITE}${path}`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: accept,
      "X-CSRFToken": jar.get("csrftoken"),
      Cookie: jar.header(),
    },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, `the site answered ${response.status}: ${response.ok ? "" : await response.text()}`);
  return response;
}

function postChat(jar, accept, body = { messages: [{ role: "user", content: "Say hello." }] }) {
  return postStream("/api/chat/stream", jar, accept, body);
}

/** Read a whole answer with ChatCompletionStream, noting when each content delta arrived. */
async function readAnswer(runner) {
  const deltas = [];
  runner.on("content", (delta) => deltas.push({ delta, at: performance.now() }));
  const completion = await runner.finalChatCompletion();
  return { completion, deltas };
}

// Each delta arrived when the upstream sent it, not all together at the end.
function assertSpreadOut(deltas) {
  const spread = deltas.at(-1).at - deltas[0].at;
  assert.ok(
    spread >= EXPECTED.min_spread_ms,
    `the deltas arrived within ${spread.toFixed(0)} ms; the upstream spread them over at least ${EXPECTED.min_spread_ms} ms`,
  );
}

function assertStreamedAsExpected({ completion, deltas }) {
  assert.equal(completion.choices[0].message.content, EXPECTED.pieces.join(""));
  assert.equal(completion.choices[0].finish_reason, "stop");
  assert.deepEqual(completion.usage, EXPECTED.usage);
  // One `content` event per piece the upstream sent, in order, each when it was sent.
  assert.deepEqual(
    deltas.map(({ delta }) => delta),
    EXPECTED.pieces,
  );
  assertSpreadOut(deltas);
}

test("ndjson: ChatCompletionStream.fromReadableStream reads the answer as it streams", async () => {
  const response = await postChat(await logIn(), "application/x-ndjson");
  assert.match(response.headers.get("content-type"), /^application\/x-ndjson/);

  assertStreamedAsExpected(await readAnswer(ChatCompletionStream.fromReadableStream(response.body)));
});

test("sse: Stream.fromSSEResponse reads the answer as it streams", async () => {
  const response = await postChat(await logIn(), "text/event-stream");
  assert.match(response.headers.get("content-type"), /^text\/event-stream/);

  // The SDK's own SSE reader (which stops at [DONE]), turned into the NDJSON that ChatCompletionStream reads.
  const chunks = Stream.fromSSEResponse(response, new AbortController());
  assertStreamedAsExpected(await readAnswer(ChatCompletionStream.fromReadableStream(chunks.toReadableStream())));
});

test("ndjson: an error line mid-stream rejects the answer with an APIError", async () => {
  const response = await postChat(await logIn(), "application/x-ndjson");
  const runner = ChatCompletionStream.fromReadableStream(response.body);
  const deltas = [];
  const errors = [];
  runner.on("content", (delta) => deltas.push(delta));
  runner.on("error", (error) => errors.push(error));

  await assert.rejects(runner.finalChatCompletion(), (error) => {
    assert.ok(error instanceof APIError, `expected an APIError, got ${error}`);
    assert.ok(error.message.includes(EXPECTED.error), `unexpected message: ${error.message}`);
    assert.equal(error.type, "upstream_error");
    return true;
  });
  assert.equal(errors.length, 1, "no `error` event was emitted");
  assert.deepEqual(deltas, EXPECTED.pieces);
});

test("sse: an error event mid-stream throws an APIError from the Stream", async () => {
  const response = await postChat(await logIn(), "text/event-stream");
  const stream = Stream.fromSSEResponse(response, new AbortController());
  const deltas = [];

  await assert.rejects(
    () => collectContent(stream, deltas),
    (error) => {
      assert.ok(error instanceof APIError, `expected an APIError, got ${error}`);
      assert.ok(error.message.includes(EXPECTED.error), `unexpected message: ${error.message}`);
      assert.equal(error.type, "upstream_error");
      return true;
    },
  );
  assert.deepEqual(deltas, EXPECTED.pieces);
});

/** Read a tool-call answer: the final completion and every `tool_calls.function.arguments.done` event. */
/** Collects a chat stream's content deltas into `deltas` until it ends (or throws). */
async function collectContent(stream, deltas) {
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      if (choice.delta.content) deltas.push(choice.delta.content);
    }
  }
}

async function readToolCalls(response) {
  const runner = ChatCompletionStream.fromReadableStream(response.body);
  const done = [];
  runner.on("tool_calls.function.arguments.done", ({ name, index, arguments: args }) =>
    done.push({ name, index, arguments: JSON.parse(args) }),
  );
  const completion = await runner.finalChatCompletion();
  return { completion, done };
}

function assertToolCallsAsExpected({ completion, done }) {
  const [choice] = completion.choices;
  assert.equal(choice.finish_reason, "tool_calls");
  assert.deepEqual(choice.message.tool_calls, EXPECTED.tool_calls);
  assert.deepEqual(
    done,
    EXPECTED.tool_calls.map((call, index) => ({ name: call.function.name, index, arguments: JSON.parse(call.function.arguments) })),
  );
}

test("ndjson: streamed tool calls reassemble with their ids, names and arguments", async () => {
  const response = await postChat(await logIn(), "application/x-ndjson", EXPECTED.request);
  assertToolCallsAsExpected(await readToolCalls(response));
});

test("ndjson: a tool-call loop runs the tool and ends in the final answer", async () => {
  const jar = await logIn();
  const { completion } = await readToolCalls(await postChat(jar, "application/x-ndjson", EXPECTED.request));
  const { content, tool_calls } = completion.choices[0].message;
  const [call] = tool_calls;
  assert.equal(call.function.name, "get_local_time");
  const result = { city: JSON.parse(call.function.arguments).city, time: "14:05" };

  const followUp = {
    ...EXPECTED.request,
    messages: [
      ...EXPECTED.request.messages,
      { role: "assistant", content, tool_calls },
      { role: "tool", tool_call_id: call.id, content: JSON.stringify(result) },
    ],
  };
  const answer = await readAnswer(ChatCompletionStream.fromReadableStream((await postChat(jar, "application/x-ndjson", followUp)).body));
  assert.equal(answer.completion.choices[0].message.content, EXPECTED.final_text);
  assert.equal(answer.completion.choices[0].finish_reason, "stop");
});

test("ndjson: a structured-output answer parses as the JSON the upstream sent", async () => {
  const response = await postChat(await logIn(), "application/x-ndjson", EXPECTED.request);
  const { completion } = await readAnswer(ChatCompletionStream.fromReadableStream(response.body));
  assert.deepEqual(JSON.parse(completion.choices[0].message.content), EXPECTED.json);
});

// --- The Responses API through the session: POST /api/responses/stream -----------------------
// Run by the Responses tests of tests/test_node_interop.py. The NDJSON body is one Responses event
// per line, which `ResponseStream.fromReadableStream` reads as a browser front end would.

function postResponses(jar, accept, body = EXPECTED.request) {
  return postStream("/api/responses/stream", jar, accept, body);
}

/** A ResponseStream over the NDJSON body, noting each text delta and when it arrived. */
function readResponse(response) {
  assert.match(response.headers.get("content-type"), /^application\/x-ndjson/);
  const stream = ResponseStream.fromReadableStream(response.body);
  const deltas = [];
  stream.on("response.output_text.delta", (event) => deltas.push({ delta: event.delta, at: performance.now() }));
  return { stream, deltas };
}

/** The function_call items of a response, as the tests compare them. */
function functionCalls(response) {
  return response.output
    .filter((item) => item.type === "function_call")
    .map(({ call_id, name, arguments: args }) => ({ call_id, name, arguments: args }));
}

/** Expects `stream` to reject with an APIError carrying `message`; returns the error. */
async function assertRejectsWithApiError(stream, message, code) {
  let caught;
  await assert.rejects(stream.finalResponse(), (error) => {
    assert.ok(error instanceof APIError, `expected an APIError, got ${error}`);
    assert.ok(error.message.includes(message), `unexpected message: ${error.message}`);
    if (code !== undefined) assert.equal(error.code, code);
    caught = error;
    return true;
  });
  return caught;
}

test("responses: ResponseStream.fromReadableStream reads the answer as it streams", async () => {
  const { stream, deltas } = readResponse(await postResponses(await logIn(), "application/x-ndjson"));
  const response = await stream.finalResponse();

  assert.equal(response.status, "completed");
  assert.equal(response.output_text, EXPECTED.pieces.join(""));
  assert.equal(response.usage.input_tokens, EXPECTED.usage.input_tokens);
  assert.equal(response.usage.output_tokens, EXPECTED.usage.output_tokens);
  assert.deepEqual(
    deltas.map(({ delta }) => delta),
    EXPECTED.pieces,
  );
  assertSpreadOut(deltas);
});

test("responses: streamed function-call arguments reassemble into the final response", async () => {
  const { stream } = readResponse(await postResponses(await logIn(), "application/x-ndjson"));
  const done = [];
  stream.on("response.function_call_arguments.done", ({ name, arguments: args }) => done.push({ name, arguments: args }));
  const response = await stream.finalResponse();

  assert.equal(response.status, "completed");
  assert.deepEqual(functionCalls(response), EXPECTED.function_calls);
  assert.deepEqual(
    done,
    EXPECTED.function_calls.map(({ name, arguments: args }) => ({ name, arguments: args })),
  );
});

test("responses: an upstream error event mid-stream rejects the ResponseStream with an APIError", async () => {
  const { stream, deltas } = readResponse(await postResponses(await logIn(), "application/x-ndjson"));
  const errors = [];
  stream.on("error", (error) => errors.push(error));

  await assertRejectsWithApiError(stream, EXPECTED.error, EXPECTED.code);
  assert.equal(errors.length, 1, "no `error` event was emitted");
  assert.deepEqual(
    deltas.map(({ delta }) => delta),
    EXPECTED.pieces,
  );
});

test("responses: a dropped upstream rejects the ResponseStream instead of hanging", async () => {
  const { stream, deltas } = readResponse(await postResponses(await logIn(), "application/x-ndjson"));
  // The Python side bounds the whole run; this bounds the wait for the rejection itself.
  const watchdog = setTimeout(() => stream.abort(), 15_000);
  try {
    await assertRejectsWithApiError(stream, EXPECTED.error, EXPECTED.code);
  } finally {
    clearTimeout(watchdog);
  }
  assert.deepEqual(
    deltas.map(({ delta }) => delta),
    EXPECTED.pieces,
  );
});

test("responses: a tool-call loop sends the function output back and reads the final answer", async () => {
  const jar = await logIn();
  const first = await readResponse(await postResponses(jar, "application/x-ndjson")).stream.finalResponse();
  const [call, ...others] = first.output.filter((item) => item.type === "function_call");
  assert.equal(others.length, 0);
  assert.equal(call.name, "get_local_time");
  const result = { city: JSON.parse(call.arguments).city, time: "14:05" };

  // The SDK's finalResponse() adds `parsed_arguments` to function calls, which the API refuses as
  // input (as OpenAI's does); toResponseInputItems strips it, as the SDK's own tool runner does.
  const followUp = {
    ...EXPECTED.request,
    input: [
      { role: "user", content: EXPECTED.request.input },
      ...toResponseInputItems([call]),
      { type: "function_call_output", call_id: call.call_id, output: JSON.stringify(result) },
    ],
  };
  const { stream, deltas } = readResponse(await postResponses(jar, "application/x-ndjson", followUp));
  const answer = await stream.finalResponse();
  assert.equal(answer.status, "completed");
  assert.equal(answer.output_text, EXPECTED.final_text);
  assert.equal(deltas.map(({ delta }) => delta).join(""), EXPECTED.final_text);
});

test("responses: sse framing carries the events in order, each named by its type", async () => {
  const response = await postResponses(await logIn(), "text/event-stream");
  assert.match(response.headers.get("content-type"), /^text\/event-stream/);

  const events = [];
  for await (const { event, data } of Stream.fromSSEResponse(response, new AbortController(), undefined, true)) {
    events.push({ event, data });
  }
  const types = events.map(({ data }) => data.type);
  assert.deepEqual(types.slice(0, 2), ["response.created", "response.in_progress"]);
  assert.equal(types.at(-1), "response.completed");
  assert.equal(types.filter((type) => type === "response.completed").length, 1);
  for (const { event, data } of events) assert.equal(event, data.type, "the SSE event name is not the event's type");
  assert.deepEqual(
    events.map(({ data }) => data.sequence_number),
    events.map((_, index) => index),
  );
  const text = events.filter(({ data }) => data.type === "response.output_text.delta").map(({ data }) => data.delta);
  assert.deepEqual(text, EXPECTED.pieces);
  const ids = new Set(events.filter(({ data }) => data.response).map(({ data }) => data.response.id));
  assert.equal(ids.size, 1, "the lifecycle events name different responses");
  const final = events.at(-1).data.response;
  assert.equal(final.usage.input_tokens, EXPECTED.usage.input_tokens);
  assert.equal(final.usage.output_tokens, EXPECTED.usage.output_tokens);
});

// --- /v1 with a personal API key: the SDK as any Node program uses it ------------------------
// Run by tests/test_v1_node.py, which also sets CHATPROXY_API_KEY (a key of the account).

function v1Client(apiKey = setting("CHATPROXY_API_KEY")) {
  return new OpenAI({ baseURL: `${SITE}/v1`, apiKey, maxRetries: 0 });
}

test("v1: the SDK streams an answer with a bearer key", async () => {
  const stream = await v1Client().chat.completions.create({
    model: EXPECTED.model,
    messages: [{ role: "user", content: "Say hello." }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const deltas = [];
  let usage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      if (choice.delta.content) deltas.push(choice.delta.content);
    }
    usage = chunk.usage ?? usage;
  }
  assert.deepEqual(deltas, EXPECTED.pieces);
  assert.deepEqual(usage, EXPECTED.usage);
});

test("v1: an error mid-stream throws an APIError", async () => {
  const stream = await v1Client().chat.completions.create({
    model: EXPECTED.model,
    messages: [{ role: "user", content: "Say hello." }],
    stream: true,
  });
  const deltas = [];
  await assert.rejects(
    () => collectContent(stream, deltas),
    (error) => {
      assert.ok(error instanceof APIError, `expected an APIError, got ${error}`);
      assert.ok(error.message.includes(EXPECTED.error), `unexpected message: ${error.message}`);
      return true;
    },
  );
  assert.deepEqual(deltas, EXPECTED.pieces);
});

test("v1: chat.completions.stream reassembles streamed tool calls", async () => {
  const runner = v1Client().chat.completions.stream(EXPECTED.request);
  const done = [];
  runner.on("tool_calls.function.arguments.done", ({ name, index, arguments: args }) =>
    done.push({ name, index, arguments: JSON.parse(args) }),
  );
  const completion = await runner.finalChatCompletion();

  const [choice] = completion.choices;
  assert.equal(choice.finish_reason, "tool_calls");
  assert.deepEqual(
    choice.message.tool_calls.map(({ id, type, function: { name, arguments: args } }) => ({
      id,
      type,
      function: { name, arguments: args },
    })),
    EXPECTED.tool_calls,
  );
  assert.deepEqual(
    done,
    EXPECTED.tool_calls.map((call, index) => ({ name: call.function.name, index, arguments: JSON.parse(call.function.arguments) })),
  );
});

test("v1: runTools runs the tool and ends in the final answer", async () => {
  const calledWith = [];
  const runner = v1Client().chat.completions.runTools({
    model: EXPECTED.model,
    messages: [{ role: "user", content: "What time is it in Lyon?" }],
    stream: true,
    tools: [
      {
        type: "function",
        function: {
          name: "get_local_time",
          description: "The time in a city.",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
          parse: JSON.parse,
          function: ({ city }) => {
            calledWith.push(city);
            return { city, time: "14:05" };
          },
        },
      },
    ],
  });

  assert.equal(await runner.finalContent(), EXPECTED.final_text);
  assert.deepEqual(calledWith, ["Lyon"]);
});

test("v1: refusals are the SDK's error classes", async () => {
  const client = v1Client();
  assert.deepEqual(
    (await client.models.list()).data.map((model) => model.id),
    EXPECTED.models,
  );
  await assert.rejects(client.models.retrieve("gpt-no-such-model"), (error) => {
    assert.ok(error instanceof NotFoundError, `expected a NotFoundError, got ${error}`);
    assert.equal(error.status, 404);
    return true;
  });
  await assert.rejects(
    client.chat.completions.create({ model: EXPECTED.models[0], messages: [{ role: "user", content: "Hi" }], temperature: 5 }),
    (error) => {
      assert.ok(error instanceof BadRequestError, `expected a BadRequestError, got ${error}`);
      assert.match(error.message, /temperature/);
      return true;
    },
  );
  await assert.rejects(v1Client(EXPECTED.bad_key).models.list(), (error) => {
    assert.ok(error instanceof AuthenticationError, `expected an AuthenticationError, got ${error}`);
    assert.equal(error.code, "invalid_api_key");
    return true;
  });
});
