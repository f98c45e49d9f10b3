import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { sandbox } from "@llmesh/client";
import { describeExit, joined, splitArgs } from "./sandbox";

describe("arguments line", () => {
  it("splits on spaces and keeps quoted parts whole", () => {
    expect(splitArgs(`one  two "three four" 'five  six'`)).toEqual(["one", "two", "three four", "five  six"]);
    expect(splitArgs(`--name="Ada Lovelace" x`)).toEqual(["--name=Ada Lovelace", "x"]);
    expect(splitArgs(`"" ''`)).toEqual(["", ""]);
    expect(splitArgs("   ")).toEqual([]);
    expect(splitArgs(`"unclosed quote`)).toEqual(["unclosed quote"]);
  });
});

describe("run results", () => {
  it("joins kept chunks in order", () => {
    const enc = new TextEncoder();
    expect(new TextDecoder().decode(joined([enc.encode("ab"), enc.encode(""), enc.encode("ç")]))).toBe("abç");
  });

  it("says how a run ended with its figures", () => {
    const exit = create(sandbox.RunExitSchema, {
      status: sandbox.RunStatus.OUT_OF_FUEL,
      message: "the run used its 1000000000 fuel",
      fuelUsed: 1_000_000_000n,
      peakMemoryBytes: 10n * 1024n * 1024n,
      durationMs: 840n,
    });
    expect(describeExit(exit)).toBe("out of fuel: the run used its 1000000000 fuel · 1.00 G fuel · 10.0 MiB memory · 840 ms");
  });
});
