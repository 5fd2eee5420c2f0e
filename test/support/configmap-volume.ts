import { mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * A directory as the kubelet lays out a ConfigMap volume: `policy.yaml -> ..data/policy.yaml`,
 * `..data -> ..<timestamp>`; an update writes a new timestamped directory, points `..data_tmp`
 * at it and renames `..data_tmp` over `..data` (atomic), then deletes the old directory.
 */
export class ConfigMapVolume {
  readonly path: string;
  private version = 0;
  private current: string | undefined;
  constructor(
    readonly dir: string,
    readonly file = "policy.yaml",
  ) {
    this.path = join(dir, file);
  }
  publish(text: string): void {
    this.version += 1;
    const name = `..2025_01_01_00_00_${String(this.version).padStart(2, "0")}.${process.pid}`;
    mkdirSync(join(this.dir, name));
    writeFileSync(join(this.dir, name, this.file), text);
    symlinkSync(name, join(this.dir, "..data_tmp"));
    renameSync(join(this.dir, "..data_tmp"), join(this.dir, "..data"));
    if (this.current === undefined) symlinkSync(join("..data", this.file), this.path);
    else rmSync(join(this.dir, this.current), { recursive: true, force: true });
    this.current = name;
  }
}
