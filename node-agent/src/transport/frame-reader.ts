// Incremental reassembly of frames ([u32 length][u8 type][body]) from a byte stream chunked anywhere.
//
// The announced length is checked against `frameBytesMax` as soon as its 4 bytes are in, before anything
// of the frame is buffered: a peer announcing a 2 GB frame is refused at once. A frame that lies whole
// inside one chunk is handed out as a view of that chunk (no copy); a frame split across chunks is
// assembled into one buffer of exactly its size. The first error poisons the reader.

export interface RawFrame {
  type: number;
  /** The body (after the type byte): a view into the chunk or into the assembled frame. */
  body: Uint8Array;
  /** Size of the whole frame on the wire, length prefix included. */
  bytes: number;
}

/** Called per frame, in order. Returning false stops the reader (the rest of the chunk is discarded). */
export type FrameSink = (frame: RawFrame) => boolean | void;

export class FrameReader {
  private readonly header = new Uint8Array(4);
  private headerFill = 0;
  private frame: Uint8Array | null = null;
  private frameFill = 0;
  private failure: string | null = null;
  private stopped = false;

  /**
   * @param frameBytesMax bound of the length field (type byte + body), bytes. May be changed between
   *   frames (e.g. raised once a connection is authenticated), also from inside the sink.
   */
  constructor(public frameBytesMax: number) {}

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.headerFill + this.frameFill;
  }

  /** The error that stopped the stream, if any. */
  get error(): string | null {
    return this.failure;
  }

  /** Stops the reader: later chunks are ignored. */
  stop(): void {
    this.stopped = true;
    this.frame = null;
  }

  /**
   * Feeds one chunk. Returns null, or the error that ended the stream (oversized or empty frame);
   * frames complete before the error were handed to `sink` already.
   */
  push(chunk: Uint8Array, sink: FrameSink): string | null {
    if (this.failure !== null) return this.failure;
    const n = chunk.byteLength;
    let pos = 0;
    while (pos < n && !this.stopped) {
      if (this.frame === null) {
        let length: number;
        if (this.headerFill === 0 && n - pos >= 4) {
          length = ((chunk[pos]! << 24) >>> 0) + ((chunk[pos + 1]! << 16) | (chunk[pos + 2]! << 8) | chunk[pos + 3]!);
          pos += 4;
        } else {
          const take = Math.min(4 - this.headerFill, n - pos);
          for (let i = 0; i < take; i++) this.header[this.headerFill++] = chunk[pos++]!;
          if (this.headerFill < 4) break;
          const h = this.header;
          length = ((h[0]! << 24) >>> 0) + ((h[1]! << 16) | (h[2]! << 8) | h[3]!);
          this.headerFill = 0;
        }
        if (length === 0) return this.fail('frame with length 0 (no type byte)');
        if (length > this.frameBytesMax) return this.fail(`frame of ${length} bytes announced, over frameBytesMax ${this.frameBytesMax}`);
        if (n - pos >= length) {
          const type = chunk[pos]!;
          const body = chunk.subarray(pos + 1, pos + length);
          pos += length;
          if (sink({ type, body, bytes: length + 4 }) === false) this.stop();
          continue;
        }
        // Not zero-filled: every byte is written from the stream before the frame is handed out.
        this.frame = new Uint8Array(Buffer.allocUnsafeSlow(length).buffer, 0, length);
        this.frameFill = 0;
      }
      const frame = this.frame;
      const take = Math.min(frame.byteLength - this.frameFill, n - pos);
      frame.set(chunk.subarray(pos, pos + take), this.frameFill);
      this.frameFill += take;
      pos += take;
      if (this.frameFill === frame.byteLength) {
        this.frame = null;
        this.frameFill = 0;
        if (sink({ type: frame[0]!, body: frame.subarray(1), bytes: frame.byteLength + 4 }) === false) this.stop();
      }
    }
    return null;
  }

  private fail(error: string): string {
    this.failure = error;
    this.frame = null;
    this.headerFill = 0;
    this.frameFill = 0;
    return error;
  }
}
