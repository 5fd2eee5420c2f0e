/** SIGTERM/SIGINT: drain then exit 0; a second signal exits at once. */
export function stopOnSignals(
  app: { stop(): Promise<void> },
  logger: { info(o: object, m: string): void },
  extra?: () => Promise<void>,
): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info({ signal }, "shutting down");
    app
      .stop()
      .then(() => extra?.())
      .then(() => process.exit(0))
      .catch(() => process.exit(1));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
