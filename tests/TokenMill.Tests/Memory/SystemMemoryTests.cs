using TokenMill.Memory;

namespace TokenMill.Tests.Memory;

/// <summary><see cref="SystemMemory"/>: the memory left that decides whether an F32 matrix gets its packed copy.</summary>
public class SystemMemoryTests
{
    [Fact]
    public void MemAvailable_is_read_in_bytes_from_meminfo()
    {
        const string meminfo = "MemTotal:       24563512 kB\nMemFree:         1202344 kB\nMemAvailable:   20211840 kB\nBuffers:          123 kB\n";
        Assert.Equal(20211840L * 1024, SystemMemory.MemAvailable(meminfo));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("MemTotal:       24563512 kB\n")]
    [InlineData("MemAvailable:   lots kB\n")]
    [InlineData("MemAvailable:   20211840 MB\n")]
    public void A_missing_or_malformed_MemAvailable_line_gives_none(string? meminfo) => Assert.Null(SystemMemory.MemAvailable(meminfo));

    [Fact]
    public void This_machine_has_some_memory_left() => Assert.True(SystemMemory.AvailableBytes() > 0);
}
