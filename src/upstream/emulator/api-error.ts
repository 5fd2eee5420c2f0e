/**
 * An error the emulated cloud answers inside `{"Response":{"Error":{...}}}` with HTTP 200,
 * exactly as Tencent Cloud API 3.0 does.
 */
export class ApiError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = "ApiError";
    this.code = code;
  }
}

export function apiError(code: string, message: string): ApiError {
  return new ApiError(code, message);
}
