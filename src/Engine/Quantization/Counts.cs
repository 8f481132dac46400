namespace TokenMill.Quantization;

/// <summary>
/// A count as a type argument: a kernel generic over it is compiled once per count, its unused accumulators and loads
/// gone (<see cref="TileGemm"/>'s 1–6 activation rows and 1 or 4 weight rows, <see cref="PackedFloat"/>'s 1–12 and 2–16 activations).
/// </summary>
internal interface ICount { static abstract int Value { get; } }

internal struct One : ICount { public static int Value => 1; }
internal struct Two : ICount { public static int Value => 2; }
internal struct Three : ICount { public static int Value => 3; }
internal struct Four : ICount { public static int Value => 4; }
internal struct Five : ICount { public static int Value => 5; }
internal struct Six : ICount { public static int Value => 6; }
internal struct Seven : ICount { public static int Value => 7; }
internal struct Eight : ICount { public static int Value => 8; }
internal struct Nine : ICount { public static int Value => 9; }
internal struct Ten : ICount { public static int Value => 10; }
internal struct Eleven : ICount { public static int Value => 11; }
internal struct Twelve : ICount { public static int Value => 12; }
internal struct Thirteen : ICount { public static int Value => 13; }
internal struct Fourteen : ICount { public static int Value => 14; }
internal struct Fifteen : ICount { public static int Value => 15; }
internal struct Sixteen : ICount { public static int Value => 16; }
