/**
 * SIGTERM/SIGINT: drain then exit 0; a second signal exits at once. Also the last safety net:
 * an exception nothing caught is a bug, logged with its stack, after which the process drains
 * and exits 1 (its state is unknown); a promise rejection nothing handled is logged and
 * serving goes on. Requests never get here: the API server answers every error it meets.
 */
export function stopOnSignals(
  app: { stop(): Promise<void> },
  logger: { info(o: object, m: string): void; error(o: object, m: string): void },
  extra?: () => Promise<void>,
): void {
  let stopping = false;
  const stop = (code: number) => {
    stopping = true;
    app
      .stop()
      .then(() => extra?.())
      .then(() => process.exit(code))
      .catch(() => process.exit(1));
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(1);
    logger.info({ signal }, "shutting down");
    stop(0);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("uncaughtException", (err) => {
    logger.error({ err: err.message, stack: err.stack }, "uncaught exception (a bug): draining and exiting");
    if (!stopping) stop(1);
  });
  process.on("unhandledRejection", (reason) => {
    const err = reason instanceof Error ? reason : new Error(String(reason));
    logger.error({ err: err.message, stack: err.stack }, "unhandled promise rejection (a bug)");
  });
}
