' The launch contract's reporting half: JSON Lines events on stdout, logs on stderr.
Imports System.IO
Imports System.Text
Imports System.Text.Encodings.Web
Imports System.Text.Json

Public Module Events
    ''' <summary>Strict UTF-8: no BOM, and invalid bytes throw instead of becoming U+FFFD.</summary>
    Public ReadOnly Utf8 As New UTF8Encoding(False, True)

    Private ReadOnly Stdout As Stream = Console.OpenStandardOutput()
    ' Non-ASCII text is written as raw UTF-8; "relaxed" only means not escaped for embedding in HTML.
    Private ReadOnly JsonOptions As New JsonSerializerOptions With {.Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping}

    ''' <summary>Write one event as one JSON line and flush it at once, so the orchestrator sees it live.</summary>
    Public Sub Emit(name As String, ParamArray fields As (Key As String, Value As Object)())
        Dim line As New Dictionary(Of String, Object) From {{"event", name}}
        For Each field In fields
            line(field.Key) = field.Value
        Next
        SyncLock Stdout
            Stdout.Write(JsonSerializer.SerializeToUtf8Bytes(line, JsonOptions))
            Stdout.WriteByte(AscW(vbLf))
            Stdout.Flush()
        End SyncLock
    End Sub

    Public Sub Log(message As String)
        Console.Error.WriteLine(message)
    End Sub
End Module

''' <summary>A fatal error: reported as an `error` event, then the role exits 1.</summary>
Public Class Failure
    Inherits Exception

    Public ReadOnly Property Code As String
    Public ReadOnly Property Reason As String

    Public Sub New(code As String, reason As String)
        MyBase.New(reason)
        Me.Code = code
        Me.Reason = reason
    End Sub
End Class

''' <summary>The role's --timeout: milliseconds left, or Nothing when there is no limit (0).</summary>
Public Class Deadline
    Private ReadOnly _end As Long?  ' on the monotonic millisecond clock

    Public Sub New(timeoutMs As Integer)
        If timeoutMs > 0 Then _end = Environment.TickCount64 + timeoutMs
    End Sub

    Public Function RemainingMs() As Long?
        If _end Is Nothing Then Return Nothing
        Return Math.Max(0, _end.Value - Environment.TickCount64)
    End Function

    Public Function Expired() As Boolean
        Return _end IsNot Nothing AndAlso Environment.TickCount64 >= _end.Value
    End Function

    ''' <summary>A poll timeout of at most `ms` that never runs past the deadline.</summary>
    Public Function Cap(ms As Long) As TimeSpan
        Dim left = RemainingMs()
        Return TimeSpan.FromMilliseconds(If(left Is Nothing, ms, Math.Min(ms, left.Value)))
    End Function
End Class

''' <summary>
''' Orders strings by their UTF-8 bytes (unsigned, shorter prefix first), as the protocol sorts
''' handles. .NET's ordinal order compares UTF-16 code units, which differs above U+FFFF.
''' </summary>
Public Class Utf8Order
    Implements IComparer(Of String)

    Public Shared ReadOnly Instance As New Utf8Order()

    Public Function Compare(x As String, y As String) As Integer Implements IComparer(Of String).Compare
        Dim a = Utf8.GetBytes(x), b = Utf8.GetBytes(y)
        For i = 0 To Math.Min(a.Length, b.Length) - 1
            If a(i) <> b(i) Then Return a(i).CompareTo(b(i))
        Next
        Return a.Length.CompareTo(b.Length)
    End Function
End Class
