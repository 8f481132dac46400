#!/usr/bin/env pwsh
# Thin wrapper over the dotnet CLI: ./build.ps1 [build|test|publish] [-Configuration Release]
param(
    [ValidateSet('build', 'test', 'publish')] [string] $Target = 'build',
    [string] $Configuration = 'Release'
)
$ErrorActionPreference = 'Stop'
Set-Location $PSScriptRoot
switch ($Target) {
    'build'   { dotnet build Engine.sln -c $Configuration }
    'test'    { dotnet test Engine.sln -c $Configuration }
    'publish' { dotnet publish src/Server/Server.csproj -c $Configuration -o artifacts/tokenmill }
}
exit $LASTEXITCODE
