/**
 * Runs `validatePolicyText` in a worker thread started by `isolated.ts`: a hostile file can then
 * use up only this thread's bounded heap and time, never the event loop serving requests.
 * Protocol: "ready" once loaded, then one text in, one `PolicyValidation` out.
 */
import { parentPort } from "node:worker_threads";
import { validatePolicyText, type PolicyValidation } from "./load.js";

const port = parentPort;
if (port) {
  port.once("message", (text: unknown) => {
    let answer: PolicyValidation;
    try {
      answer =
        typeof text === "string"
          ? validatePolicyText(text)
          : { ok: false, errors: ["(file): no text given"] };
    } catch (e) {
      // The message of an unexpected throw may quote the file: only its kind is reported.
      answer = { ok: false, errors: [`(file): cannot be parsed (${(e as Error).name ?? "error"})`] };
    }
    port.postMessage(answer);
  });
  port.postMessage("ready");
}
