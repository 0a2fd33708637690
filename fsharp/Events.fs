/// The launch contract's reporting half: JSON Lines events on stdout, logs on stderr.
module Btb.Events

open System
open System.Diagnostics
open System.IO
open System.Text
open System.Text.Encodings.Web
open System.Text.Json

/// Strict UTF-8: no byte order mark, and invalid bytes throw instead of becoming U+FFFD.
let utf8 = UTF8Encoding(false, true)

let private out = new StreamWriter(Console.OpenStandardOutput(), utf8, AutoFlush = true)
let private json = JsonSerializerOptions(Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping)

/// Write one event as one JSON line and flush it at once, so the orchestrator sees it live.
let emit (event: string) (fields: (string * obj) list) =
    out.WriteLine(JsonSerializer.Serialize(dict (("event", box event) :: fields), json))

let log (message: string) = eprintfn "%s" message

/// A fatal error: reported as an `error` event, then the role exits 1.
exception Failure of code: string * reason: string

let private clock = Stopwatch.StartNew()

/// Monotonic milliseconds since the program started.
let nowMs () = clock.ElapsedMilliseconds

/// The role's --timeout: milliseconds left, or None when there is no limit (0).
type Deadline(timeoutMs: int) =
    let ends = if timeoutMs > 0 then Some(nowMs () + int64 timeoutMs) else None

    member _.RemainingMs = ends |> Option.map (fun e -> max 0L (e - nowMs ()))

    member _.Expired = ends |> Option.exists (fun e -> nowMs () >= e)

    /// A poll timeout of at most `ms` that never runs past the deadline.
    member this.Cap(ms: int64) =
        match this.RemainingMs with
        | Some left -> min ms left
        | None -> ms
