import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

/**
 * Paths pino blanks out wherever they appear, so a secret put in a log object by mistake
 * never reaches the output (G6). Messages are our own strings and never carry secrets.
 */
export const REDACT_PATHS = [
  "authorization",
  "*.authorization",
  "headers.authorization",
  "token",
  "*.token",
  "secretKey",
  "*.secretKey",
  "secret_key",
  "*.secret_key",
  "password",
  "*.password",
  "credentials",
  "*.credentials",
];

/** JSON logs to stdout (or `destination` in tests). */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "keygate" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
