' The counter-based generator that the ticker's prices and the valuation's orders are made of
' (examples/ticker/PROTOCOL.md, "Prices: a counter-based PRNG anyone can recompute"): a value depends
' only on its inputs, so a receiver can recompute what the sender must have sent.
' Arithmetic modulo 2^64, as the protocol says: btb.vbproj turns VB's overflow checks off.
Public Module Prng
    Public Const Golden As ULong = &H9E3779B97F4A7C15UL

    Public Function Fnv1a64(data As Byte()) As ULong
        Dim h = &HCBF29CE484222325UL
        For Each b In data
            h = (h Xor b) * &H100000001B3UL
        Next
        Return h
    End Function

    Public Function SplitMix64(x As ULong) As ULong
        Dim z = x + Golden
        z = (z Xor (z >> 30)) * &HBF58476D1CE4E5B9UL
        z = (z Xor (z >> 27)) * &H94D049BB133111EBUL
        Return z Xor (z >> 31)
    End Function
End Module
