// Types for `import … from 'anoscope'` (api.js): the detector as a JavaScript API.

/** Progress of starting the module or loading a model. */
export interface Progress {
  stage: string;
  done: number;
  total: number;
  label?: string;
}

/**
 * What a model argument may be:
 * - a URL of a checkpoint folder (config.json + model.safetensors, or open_clip_config.json +
 *   open_clip_model.safetensors; prompts.safetensors is used when present), CORS-enabled when on another origin;
 * - a URL of a site's `models.json` with `#name`;
 * - a name in the package's manifest.json (Hugging Face, sha256-pinned);
 * - nothing: the manifest's smallest pinned checkpoint;
 * - a resolved {@link ModelSpec}.
 */
export type ModelSource = string | ModelSpec | undefined | null;

/**
 * A checkpoint's storage: 'q8' (the image tower's block linear layers in int8, `anoscope convert
 * --dtype q8`: faster on the CPU, smaller), 'f16' (the reference), 'f32'. As an option, 'auto'
 * (or leaving it out) takes the model's default: q8 on the CPU where a site's models.json offers
 * it, the reference with WebGPU (the GPU runs the image tower in f32 whichever file is loaded).
 */
export type Dtype = 'q8' | 'f16' | 'f32';

/** A model as the worker loads it (see resolveModel). */
export interface ModelSpec {
  label: string;
  test: boolean;
  configName: 'config.json' | 'open_clip_config.json' | string;
  configUrl: string;
  configSha256?: string;
  weightsUrl: string;
  weightsSha256?: string;
  promptsUrl?: string;
  promptsSha256?: string;
  /** A learned file loaded with the model (the modes anomalyclip and adaptclip). */
  learnedUrl?: string;
  learnedSha256?: string;
  learnedImageSize?: number;
  size?: number;
  /** What the weights file must hold (checked on its header before the rest is read). */
  dtype?: Dtype;
  source?: 'manifest' | 'models.json' | 'folder';
}

/** A learned file (what `anoscope convert --learned FILE.pth --model DIR` writes): a URL, or a URL with its sha256 and input size. */
export type LearnedSource = string | URL | { url: string | URL; sha256?: string; imageSize?: number };

/** The learned file loaded for the model: its mode and the side images are resized to in it. */
export interface LearnedInfo {
  mode: 'anomalyclip' | 'adaptclip';
  imageSize: number;
}

export interface DetectorOptions {
  /** The model (default: the manifest's smallest pinned checkpoint). */
  model?: ModelSource;
  /** A learned file loaded with the model, for the modes anomalyclip and adaptclip (default: the one its models.json entry lists). */
  learned?: LearnedSource;
  /**
   * The variant to load: a models.json entry's q8 or f16 file; for a folder URL or a manifest
   * name, the type its file must be. Default: the model's default variant (see {@link Dtype}).
   */
  dtype?: Dtype | 'auto';
  /** Folder holding the package's files (worker.js, pkg/, build.json …); default: next to this module. */
  assetsBase?: string | URL;
  onProgress?: (p: Progress) => void;
}

export interface DetectorInfo {
  version: string;
  /** Threads the WebAssembly module runs on (more than 1 only on cross-origin isolated pages). */
  threads: number;
  /** Where the image tower runs, e.g. 'CPU (WebAssembly SIMD + relaxed, int8, 2 threads)' (int8 while a q8 model's tower runs in int8). */
  backend?: string;
  crossOriginIsolated: boolean;
  /** One line saying which build runs and why. */
  notice: string;
}

export type ImageInput =
  | Blob
  | ImageData
  | HTMLCanvasElement
  | OffscreenCanvas
  | ImageBitmap
  | HTMLImageElement
  | HTMLVideoElement;

export interface DetectOptions {
  /** What the image shows (a bottle, a screw …); default 'object'. */
  category?: string;
  /** anomalyclip and adaptclip (zero-shot) need the model's learned file; `category` is then not used. */
  mode?: 'fast' | 'winclip' | 'anomalyclip' | 'adaptclip';
  /** Score at or above which the verdict is 'anomalous'; default 0.5. */
  threshold?: number;
  name?: string;
}

export interface DetectResult {
  score: number;
  verdict: 'anomalous' | 'normal';
  threshold: number;
  /** Row-major width × height, values in [0, 1]. */
  map: Float32Array;
  width: number;
  height: number;
  ms: number;
  name?: string;
}

export class Detector {
  constructor(options?: Omit<DetectorOptions, 'model'>);
  readonly assetsBase: string;
  info: DetectorInfo | null;
  start(): Promise<DetectorInfo>;
  /** `learned`: a learned file to load with the model instead of its entry's; `false`: none. `dtype`: the variant. */
  load(
    model?: ModelSource,
    options?: { learned?: LearnedSource | false; dtype?: Dtype | 'auto' },
  ): Promise<{ label: string; test: boolean; imageSize: number; hasText: boolean; ms: number; learned: LearnedInfo | null; dtype: Dtype | 'bf16' | null; int8: boolean }>;
  /** Loads a learned file for the loaded model (refused with the reason when it belongs to another checkpoint; the model stays). */
  loadLearned(source: string | URL | Blob | ArrayBuffer | ArrayBufferView, options?: { sha256?: string; imageSize?: number }): Promise<LearnedInfo>;
  /** Throws why `mode` cannot score with the loaded model (unknown mode, learned mode without its file). */
  checkMode(mode: string): void;
  detect(input: ImageInput, options?: DetectOptions): Promise<DetectResult>;
  overlay(options?: { threshold?: number }): Promise<{ rgba: Uint8Array; width: number; height: number }>;
  close(): void;
}

/** Starts the module and loads the model. */
export function createDetector(options?: DetectorOptions): Promise<Detector>;
/** Resolves a model argument to the spec the worker loads. */
export function resolveModel(
  model: ModelSource,
  options?: { assetsBase?: string | URL; dtype?: Dtype | 'auto'; gpu?: boolean },
): Promise<ModelSpec>;
/** Checks a dtype option: the dtype, or undefined for the default ('auto', ''); throws otherwise. */
export function checkDtype(dtype?: string | null): Dtype | undefined;
/** The manifest's default checkpoint for embedding: its smallest pinned one. */
export function defaultManifestModel(manifest: unknown): ModelSpec | null;
/** The package's weights manifest. */
export function manifest(assetsBase?: string | URL): Promise<unknown>;
export function assetsBaseOf(base?: string | URL | null): string;
export function verdict(score: number, threshold: number): 'anomalous' | 'normal';
export const DEFAULT_ASSETS_BASE: string;
export const MODES: readonly ['fast', 'winclip', 'anomalyclip', 'adaptclip'];
export const LEARNED_MODES: readonly ['anomalyclip', 'adaptclip'];
/** A checkpoint folder's learned file: learned.safetensors there, its size from learned.json. */
export function learnedOfFolder(folder: string | URL): Promise<{ url: string; imageSize?: number }>;
