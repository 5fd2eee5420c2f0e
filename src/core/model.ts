/** The parameters of one AssociateInstancesKeyPairs call, already validated. */
export interface AssociateInput {
  region: string;
  instanceIds: string[];
  keyIds: string[];
  forceStop: boolean;
}

/** A caller's request as the domain sees it (proto-free). */
export interface AssociateRequest extends AssociateInput {
  /** "" when absent. */
  idempotencyKey: string;
  waitForCompletion: boolean;
}

export type TaskState = "SUCCESS" | "FAILED" | "OPERATING";

export interface InstanceOutcome {
  instanceId: string;
  state: TaskState;
  message: string;
}

export interface AssociateResult {
  requestId: string;
  deduplicated: boolean;
  instances: InstanceOutcome[];
  /**
   * Instances carried by the cloud call that carried this caller's (docs/decisions/batching.md);
   * 0 when unknown (an inherited or reconciled send).
   */
  batchInstances?: number;
  /** keygate's id of that call, also in the audit line; "" when unknown. */
  batchId?: string;
}

/** What DescribeInstances tells about one instance (only the fields keygate uses). */
export interface InstanceInfo {
  instanceId: string;
  instanceState: string;
  osName: string;
  projectId: number;
  tags: Record<string, string>;
  keyIds: string[];
  latestOperation: string | null;
  latestOperationState: TaskState | null;
  latestOperationRequestId: string | null;
  latestOperationErrorMsg: string | null;
}
